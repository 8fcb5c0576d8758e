"""Email addresses in one form per account, lookalikes refused.

An address is stored and looked up in its normal form: NFKC, then case-folded (then NFKC
again, which case-folding can undo), so `\uff41@x.com` (a full-width a), `A@X.COM` and `a@x.com` are one
account. What NFKC cannot make visible is refused at registration: control, format and
separator characters (Unicode Cc, Cf, Zs, Zl, Zp: every space, zero-width character and
bidi mark, the soft hyphen), combining marks left over in the local part, and a domain
not in ASCII (an internationalised domain is given in its `xn--` form, as DNS reads it:
Unicode is where domain lookalikes hide, `x.com` with a combining accent on its `m`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import NamedTuple

from exchange.errors import ExchangeError
from exchange.schemas import StoredEmail

EMAIL_MAX_LENGTH = 254  # as users.email's CHECK
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
COMBINING_CATEGORIES = frozenset({"Mn", "Mc", "Me"})


def normal_email(text: str) -> str:
    """The form an address is stored and found by."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def refusal(text: str) -> ExchangeError | None:
    """Why a new account may not have this address (as sent, or as stored), if it may not."""
    normal = normal_email(text)
    for character in text + normal:  # as sent first: U+00A0 is named, not the space NFKC makes of it
        category = unicodedata.category(character)
        if category in INVISIBLE_CATEGORIES:
            return _invalid_character(character, category)
    local, _, domain = normal.rpartition("@")
    for character in local:
        category = unicodedata.category(character)
        if category in COMBINING_CATEGORIES:
            return _invalid_character(character, category)
    if not domain.isascii():
        return ExchangeError(
            "email_domain_not_ascii",
            "the email's domain must be in ASCII: give an internationalised domain in its xn-- form",
        )
    if len(normal) > EMAIL_MAX_LENGTH:
        return ExchangeError(
            "validation_error",
            f"the email is longer than {EMAIL_MAX_LENGTH} characters once normalised (NFKC)",
            {"field": "email"},
        )
    return None


def checked_email(text: str) -> str:
    """The normal form of a new account's address; raises its refusal (422) if it has one."""
    error = refusal(text)
    if error is not None:
        raise error
    return normal_email(text)


def _invalid_character(character: str, category: str) -> ExchangeError:
    name = unicodedata.name(character, "unnamed")
    return ExchangeError(
        "email_invalid_characters",
        "emails may not hold spaces, invisible or control characters, or combining marks "
        f"left over after NFKC (found U+{ord(character):04X} {name})",
        {"character": f"U+{ord(character):04X}", "category": category},
    )


class EmailReport(NamedTuple):
    collisions: list[list[StoredEmail]]  # accounts sharing one normal form, by id
    refused: list[tuple[StoredEmail, str]]  # with the refusal's code
    to_normalise: list[StoredEmail]  # stored in another form, none of the above

    @property
    def needs_an_admin(self) -> bool:
        return bool(self.collisions or self.refused)


def email_report(accounts: Iterable[StoredEmail]) -> EmailReport:
    """What `exchange check-emails` reports about accounts made before emails were
    normalised. Nothing is merged: colliding or refused accounts are for an admin."""
    by_form: dict[str, list[StoredEmail]] = {}
    for account in accounts:
        by_form.setdefault(normal_email(account.email), []).append(account)
    collisions = [group for group in by_form.values() if len(group) > 1]
    refused: list[tuple[StoredEmail, str]] = []
    to_normalise: list[StoredEmail] = []
    for group in by_form.values():
        for account in group:
            error = refusal(account.email)
            if error is not None:
                refused.append((account, error.code))
            elif len(group) == 1 and account.email != normal_email(account.email):
                to_normalise.append(account)
    return EmailReport(collisions, sorted(refused), sorted(to_normalise))
