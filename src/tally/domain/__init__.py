"""The domain: money, accounts, transfers, result codes and policies. Pure Python, no I/O."""
