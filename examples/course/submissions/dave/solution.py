def add(a, b)   # a syntax error: the import fails (that test scores 0), main.py still runs
    return a + b
