import sys

from guardrail.cli.main import main

sys.exit(main())
