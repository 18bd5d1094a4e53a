"""A small demo dataset for `chatdb serve --demo`: people who can sign in."""

from sqlalchemy.orm import Session

from chatdb import store

DEMO_PASSWORD = "chatdb-demo"  # noqa: S105 (published on purpose: demo accounts)
DEMO_USERS = (
    ("alice", "Alice Martin"),
    ("bob", "Bob Chen"),
    ("carol", "Carol Diaz"),
    ("dave", "Dave Okafor"),
)

_TEAM_CHAT = (
    ("alice", "Morning all! Stand-up in 10 minutes?"),
    ("bob", "Sounds good. I'll share the release notes."),
    ("carol", "Running a bit late, start without me."),
    ("dave", "The staging deploy finished overnight, all green."),
    ("alice", "Great news. @bob can you tag the release after lunch?"),
    ("bob", "Will do."),
    ("carol", "Back now. Did we decide on the retention window?"),
    ("alice", "30 days for deleted conversations, then purge."),
)
_DIRECT_CHAT = (
    ("bob", "Hey Alice, got a minute to review my pull request?"),
    ("alice", "Sure, send me the link."),
    ("bob", "It's the one about keyset pagination."),
    ("alice", "Looks good. No OFFSET anywhere, nice."),
)


def demo_needed(*, session: Session) -> bool:
    return store.overview(session=session).users == 0


def create_demo(*, session: Session) -> list[str]:
    """Users with DEMO_PASSWORD, a group and a direct conversation with history.
    Returns the usernames."""
    users = {}
    for username, display_name in DEMO_USERS:
        user = store.create_user(
            session=session,
            username=username,
            email=f"{username}@demo.chatdb",
            display_name=display_name,
        )
        store.set_password(session=session, user_id=user.id, password=DEMO_PASSWORD)
        users[username] = user.id
    team = store.create_group(
        session=session,
        creator_id=users["alice"],
        title="Demo team",
        member_ids=[users[name] for name, _ in DEMO_USERS[1:]],
    )
    direct, _ = store.get_or_create_direct(
        session=session, user_id=users["alice"], other_user_id=users["bob"]
    )
    for conversation_id, chat in ((team.id, _TEAM_CHAT), (direct.id, _DIRECT_CHAT)):
        for sender, body in chat:
            store.send_message(
                session=session,
                conversation_id=conversation_id,
                sender_id=users[sender],
                body=body,
            )
    return [name for name, _ in DEMO_USERS]
