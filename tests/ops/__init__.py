"""Tests of htabtool.ops."""
