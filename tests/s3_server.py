"""moto's S3 backend alone, served on 127.0.0.1 in a process of its own; ``tests/s3_fixtures.py`` starts it.

Only the S3 application: moto's all-services server works out each request's service first (it lists its own
package's folders for every request), which costs ~1 ms a request of the tests' CPU. In its own process the
server does not take the test process's interpreter lock from the drivers that run there. It prints its port,
then serves until it is terminated or the process that started it ends."""

from __future__ import annotations

import logging
import os
import threading
import time

from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:  # re-parented: the test process is gone (killed), so is its bucket
        time.sleep(1)
    os._exit(0)


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = make_server("127.0.0.1", 0, create_backend_app("s3"), threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
