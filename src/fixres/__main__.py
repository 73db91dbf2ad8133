"""``python -m fixres`` (what ``torchrun -m fixres ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
