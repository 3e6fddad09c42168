"""The state tests use the shared fixtures of tests/conftest.py (`state_redis`, `state_env`, `make_store`)."""
