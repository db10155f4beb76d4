"""SIP user agent: sans-IO core (messages, transactions, auth, dialogs) and asyncio adapters."""
