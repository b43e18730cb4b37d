"""Pure LazyFrame transforms: no file I/O, no clock, no environment; every input is a parameter."""
