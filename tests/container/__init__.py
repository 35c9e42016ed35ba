"""Tests of htabtool.container."""
