"""``python -m gateway.asyncapi``: print the AsyncAPI document (e.g. for a code generator)."""

import sys

from gateway.asyncapi import document_bytes

sys.stdout.buffer.write(document_bytes() + b"\n")
