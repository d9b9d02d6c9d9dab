"""``python -m mtal_models.simulate [simulate] --config ... --out ...``"""

from mtal_models.simulate.cli import main

raise SystemExit(main())
