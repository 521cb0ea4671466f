"""The worker process: loop, stages, transports, store, CLI.

beanmail installs two top-level packages, ``producer`` and ``worker`` (the names web apps and
scripts use). Another distribution with a package of the same name would shadow or overwrite one
of them; the worker refuses to run against a ``producer`` that is not beanmail's, in one line.
"""

import producer as _producer

if getattr(_producer, "DISTRIBUTION", None) != "beanmail":
    raise ImportError(f"the 'producer' package at {getattr(_producer, '__file__', '?')} is not beanmail's: another"
                      " distribution installs a top-level 'producer' too; install beanmail in a virtual"
                      " environment of its own (or the application's) without it")
