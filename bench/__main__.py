"""``python -m bench``: run every benchmark module and print one METRIC table (see bench.collect)."""

from bench.collect import main

raise SystemExit(main())
