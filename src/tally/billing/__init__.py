"""The service layer: the engine API (debit, credit, batch), recharge saga, remediation, freeze."""
