"""The one native part: `aidp.engine._spawn` (see its source). `optional`: where it cannot be
built (no C compiler), aidp installs without it and starts harnesses through `sh`."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("aidp.engine._spawn", ["server/aidp/engine/_spawn.c"], optional=True)])
