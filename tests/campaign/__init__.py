"""The seeded fault campaign: does the delivery guarantee (contract v3 §2) hold under faults?

``python -m tests.campaign --minutes N --seed S`` runs a soak; ``test_campaign.py`` runs a short
one with fixed seeds in the test command. See docs/reliability.md.
"""
