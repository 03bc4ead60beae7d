import sys

from PromptSegLib.cli.main import main

sys.exit(main())
