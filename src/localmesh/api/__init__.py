"""Generated code of localmesh's own protobuf APIs (protos/localmesh/api/...), in one place.

Regenerate with `./dev protos`; tests/unit/test_generated_protos.py fails when it is stale.
"""
