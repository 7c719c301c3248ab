import time
while True:  # hangs: the wall time stops it, the other tests still count
    time.sleep(1)
