"""Password accounts and sessions: register, log in, log out, who is calling."""

from __future__ import annotations

from uuid import UUID, uuid4

from application import validation
from application.errors import Conflict, NotFound, Unauthorized
from application.eventlog import EventLog
from application.ports import CredentialStore, PasswordHasher, ReadModel, Row
from application.throttle import LoginThrottle, RateLimit
from domain.base import acting_as
from domain.users import User, Username


class Accounts:
    def __init__(
        self,
        log: EventLog,
        reads: ReadModel,
        passwords: PasswordHasher,
        credentials: CredentialStore,
        throttle: LoginThrottle,
        registrations: RateLimit,
    ) -> None:
        self._log = log
        self._reads = reads
        self._passwords = passwords
        self._credentials = credentials
        self._throttle = throttle
        self._registrations = registrations

    def register(
        self, username: str, password: str, email: str | None, client: str = "local"
    ) -> tuple[Row, str]:
        """Create a user with a password; returns the user and a new session token.
        Each attempt costs an argon2id hash, so attempts per client address are limited."""
        username = validation.username(username)
        password = validation.password(password)
        email = validation.email(email)
        self._registrations.hit(f"signup:{client}", "sign-ups")
        if self._reads.user_by_username(username) is not None:
            raise Conflict("that username is taken", code="username_taken")
        hashed = self._passwords.hash(password)

        def command() -> UUID:
            if self._log.find(Username.create_id(username), Username) is not None:
                raise Conflict("that username is taken", code="username_taken")
            user_id = uuid4()
            with acting_as(user_id):
                user = User(id=user_id, username=username, email=email, display_name=username)
                # The event says a password was set; the hash goes to its own table.
                user.password_set()
                claim = Username(username=username, user_id=user_id)
            self._log.save(
                user,
                claim,
                side_writes=[self._credentials.password_write(user.id, hashed)],
            )
            return user.id

        user_id = self._log.retrying(command)
        return self.me(user_id), self._credentials.open_session(user_id)

    def login(self, username: str, password: str, client: str) -> tuple[Row, str]:
        key = username.strip().lower()
        self._throttle.check(key, client)
        user = self._reads.user_by_username(key) if len(key) <= 64 else None
        hashed = self._credentials.password_hash(user["id"]) if user else None
        # Verify even for an unknown user (against a decoy hash): both failures look and
        # take the same.
        if not self._passwords.verify(hashed, password) or user is None:
            self._throttle.failed(key, client)
            raise Unauthorized("wrong username or password", code="bad_credentials")
        self._throttle.succeeded(key, client)
        return self._with_providers(user), self._credentials.open_session(user["id"])

    def logout(self, token: str) -> None:
        self._credentials.revoke_session(token)

    def authenticate(self, token: str | None) -> UUID:
        user_id = self._credentials.session_user(token) if token else None
        if user_id is None:
            raise Unauthorized("sign in first", code="unauthenticated")
        return user_id

    def me(self, user_id: UUID) -> Row:
        """The user, with the sign-in providers linked to them."""
        user = self._reads.user_with_identities(user_id)
        if user is None:
            raise NotFound("user not found")
        return user

    def _with_providers(self, user: Row) -> Row:
        return {**user, "providers": self._reads.identities(user["id"])}
