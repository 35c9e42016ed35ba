"""Tests of htabtool.sim."""
