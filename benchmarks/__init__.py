"""Side-by-side benchmarks against peers; see README.md.  Not part of the installed package."""
