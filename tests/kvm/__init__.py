"""Tests of htabtool.kvm."""
