"""What the tests share, so no test module imports another: the CLI runner and settings (`cli`), workers
started and stopped as subprocesses (`workers`), markets and clocks (`markets`), table readers and the
reference (`helpers`, `reference`), the platform's plain-SQL schema (`platform`), and a TCP proxy
(`tcp_proxy`)."""
