"""Benchmark harness: kestrelq against memcached, beanstalkd and redis on 127.0.0.1.

`python -m bench` runs the matrix; `python -m bench.loadgen` is the pipelined load generator.
"""
