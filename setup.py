"""Builds the frame core's C extension against the running interpreter's internal headers."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dispatch.experimental.durable._frame",
            sources=["dispatch/experimental/durable/_frame.c"],
            define_macros=[("Py_BUILD_CORE", "1")],
            extra_compile_args=["-Wall", "-Werror"],
        )
    ]
)
