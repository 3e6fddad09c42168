"""`python -m app.cli ...` is `avs ...` (the service starts its worker this way)."""

from app.cli import main

raise SystemExit(main())
