"""Emails: one normal form per account (NFKC, case-folded), lookalikes refused, and
`exchange check-emails` for accounts made before (exchange/auth/emails.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx
import pytest
from conftest import TEST_PASSWORD, fresh_database, register_and_login

from exchange.store.db import connect


def address() -> tuple[str, str]:
    """A fresh (local part, domain), each starting with a letter that has a full-width twin.
    The local part ends with a digit: a combining mark after it stays a mark under NFKC
    (after a random "a" or "e", U+0308 would compose into "ä" or "ë", a letter of its own)."""
    return f"a{secrets.token_hex(4)}7", f"x{secrets.token_hex(4)}.com"


async def register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/api/v1/auth/register", json={"email": email, "password": TEST_PASSWORD})


# The lookalikes of issue 24, each of which used to answer 201 and log in.
REFUSED = {
    "zero-width space in the local part": ("{l}\u200b@{d}", "email_invalid_characters", "U+200B"),
    "zero-width space at the end": ("{l}@{d}\u200b", "email_invalid_characters", "U+200B"),
    "soft hyphen inside": ("{l}\u00ad@{d}", "email_invalid_characters", "U+00AD"),
    "right-to-left override inside": ("a\u202e{l}@{d}", "email_invalid_characters", "U+202E"),
    "no-break space inside": ("{l}\u00a0x@{d}", "email_invalid_characters", "U+00A0"),
    "ideographic space inside": ("{l}\u3000x@{d}", "email_invalid_characters", "U+3000"),
    "em space inside": ("{l}\u2003x@{d}", "email_invalid_characters", "U+2003"),
    "line separator inside": ("{l}\u2028@{d}", "email_invalid_characters", "U+2028"),
    # A digit takes no accent: the mark stays a mark after NFKC.
    "combining accent at the end of the local part": ("{l}\u0308@{d}", "email_invalid_characters", "U+0308"),
    # NFKC composes m + U+0301 into U+1E3F: x.com looks like x.coḿ, a Unicode domain.
    "combining accent at the end": ("{l}@{d}\u0301", "email_domain_not_ascii", None),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
async def test_lookalike_emails_are_refused_with_422(client: httpx.AsyncClient, case: str) -> None:
    local, domain = address()
    assert (await register(client, f"{local}@{domain}")).status_code == 201
    template, code, character = REFUSED[case]
    answer = await register(client, template.format(l=local, d=domain))
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    if character is not None:
        assert error["details"]["character"] == character
        assert character in error["message"]


# Spellings that are the same address once normalised: taken, and they log in to it.
SAME_ADDRESS = {
    "full-width letter in the local part": lambda local, domain: f"\uff41{local[1:]}@{domain}",
    "full-width letter in the domain": lambda local, domain: f"{local}@\uff58{domain[1:]}",
    "upper case": lambda local, domain: f"{local}@{domain}".upper(),
    "composed and decomposed accents": lambda local, domain: f"{local}e\u0301@{domain}",
}


@pytest.mark.parametrize("case", SAME_ADDRESS, ids=list(SAME_ADDRESS))
async def test_other_spellings_of_an_email_are_taken_and_log_in_to_it(
    client: httpx.AsyncClient, case: str
) -> None:
    local, domain = address()
    email = f"{local}\u00e9@{domain}" if "accents" in case else f"{local}@{domain}"
    account = await register_and_login(client, email)
    spelling = SAME_ADDRESS[case](local, domain)
    taken = await register(client, spelling)
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "email_taken")
    token = await client.post("/api/v1/auth/token", data={"username": spelling, "password": TEST_PASSWORD})
    assert token.status_code == 200, token.text
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.json()["user"]["id"] == account.id


async def test_an_email_is_stored_in_its_normal_form(client: httpx.AsyncClient) -> None:
    local, domain = address()
    created = await register(client, f"\uff21{local[1:].upper()}Stra\u00dfe@{domain.upper()}")
    assert created.status_code == 201, created.text
    assert created.json()["email"] == f"a{local[1:]}strasse@{domain}"


async def test_check_emails_reports_collisions_and_refused_emails_and_normalises_the_rest(
    service_urls: tuple[str, str],
) -> None:
    async with fresh_database(service_urls[0]) as url:
        conn = await connect(url)
        try:
            # Accounts as an older version stored them, as sent.
            emails = ["a@x.com", "\uff41@x.com", "b\u200b@x.com", "Stra\u00dfe@x.com", "c@x.com"]
            for email in emails:
                await conn.execute("INSERT INTO users (email, password_hash) VALUES ($1, 'x')", email)

            def check(*options: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "exchange", "check-emails", *options],
                    env={**os.environ, "DATABASE_URL": url},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            report = check()
            assert report.returncode == 1, report.stderr
            lines = report.stdout.splitlines()
            assert lines[:3] == [
                "collision: 2 accounts are 'a@x.com' once normalised:",
                "  id 1: 'a@x.com'",
                "  id 2: '\\uff41@x.com'",
            ]
            assert "refused today (email_invalid_characters): id 3: 'b\\u200b@x.com'" in lines
            assert "not in normal form: id 4: 'Stra\\xdfe@x.com'" in lines
            assert lines[-1].startswith("check-emails: 1 collision(s), 1 refused today, 1 not in normal form")

            normalised = check("--normalize")
            assert normalised.returncode == 1 and normalised.stdout.splitlines()[-1].endswith("1 normalised")
            stored = await conn.fetch("SELECT email FROM users ORDER BY id")
            # Only the account that collides with nothing and holds nothing refused changed.
            assert [row["email"] for row in stored] == [*emails[:3], "strasse@x.com", "c@x.com"]
        finally:
            await conn.close()
