"""``python -m headless collect|... --help``"""
import sys

from headless.cli import main

sys.exit(main())
