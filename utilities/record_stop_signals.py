"""main.py's first import: from here on SIGTERM and SIGUSR1 are recorded (utilities.early_signals), not fatal.

A module of its own so that main.py can install the handlers before its slow imports while keeping every
import at the top of the file; nothing else imports it.
"""

from utilities.early_signals import install

install()
