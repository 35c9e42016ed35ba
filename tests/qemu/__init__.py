"""Tests of htabtool.qemu."""
