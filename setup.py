"""Builds the compiled ring core; everything else is declared in setup.cfg.

The extension is optional: without a C compiler and Python's headers the install
still succeeds, and torchtroupe runs on its pure-Python ring core, several times
slower per message (``python -m torchtroupe info`` says which core runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "torchtroupe.transport._ringcore",
            sources=["torchtroupe/transport/_ringcore.c", "torchtroupe/transport/_plainpickle.c"],
            depends=["torchtroupe/transport/_plainpickle.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
            optional=True,
        )
    ]
)
