"""The tests, mirroring the library: tests/records for htabtool.records, and so on; shared
builders in tests/helpers."""
