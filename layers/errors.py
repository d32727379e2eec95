"""Make a Python layer's error visible under the `caffe` command line tool.

When a Python layer raises inside `caffe train`, Caffe's PythonLayer lets boost::python's
``error_already_set`` escape and the process aborts with a C++ stack trace: the Python message
(say, "AMSoftmaxLossLayer: the embedding of sample 3 contains NaN") is never printed. The
``reports_errors`` class decorator wraps a layer's setup/reshape/forward/backward so that an
exception is first written to stderr, as its usual last traceback line (``ValueError: ...``),
then re-raised unchanged. Under pycaffe the exception reaches the caller as before.
"""
from __future__ import annotations

import functools
import sys
import traceback

METHODS = ("setup", "reshape", "forward", "backward")


def _wrap(cls_name: str, method_name: str, method):
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except Exception as e:
            # A ValueError is the layers' own message about bad input (what a user needs);
            # anything else is a bug: the whole traceback, with file and line.
            lines = (traceback.format_exception_only(type(e), e) if isinstance(e, ValueError)
                     else traceback.format_exception(type(e), e, e.__traceback__))
            sys.stderr.write(f"Python layer {cls_name} failed in {method_name}:\n"
                             + "".join(lines))
            sys.stderr.flush()
            raise
    return wrapper


def reports_errors(cls):
    """Class decorator: print any exception of the Caffe layer methods before re-raising."""
    for name in METHODS:
        if name in vars(cls):
            setattr(cls, name, _wrap(cls.__name__, name, vars(cls)[name]))
    return cls
