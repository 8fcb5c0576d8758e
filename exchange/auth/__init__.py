"""Who is calling: passwords and tokens, revocations, rate limits, emails."""
