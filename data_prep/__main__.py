"""``python -m data_prep ...`` is ``megaseqpe-prep ...``."""
import sys

from .cli import main

sys.exit(main())
