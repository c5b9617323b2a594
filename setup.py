"""Builds the compiled ring core; everything else is declared in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "torchtroupe.transport._ringcore",
            sources=["torchtroupe/transport/_ringcore.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
        )
    ]
)
