"""The rules about credits: ledger, vending, errors, paging, audit; no transport."""
