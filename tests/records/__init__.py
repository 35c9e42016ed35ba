"""Tests of htabtool.records."""
