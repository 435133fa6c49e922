"""``python -m finetune`` — the form ``accelerate launch -m finetune`` uses."""

import sys

from finetune.cli import main

sys.exit(main())
