"""`gradio app.py`: the whole app served in Gradio's reload mode, the page rebuilt on every edit.

    gradio app.py                    # http://localhost:7860; edit app.py or serving/page.py and the page reloads

`gradio app.py` runs `python app.py` with GRADIO_WATCH_DIRS set, and Gradio installs its reloader only inside
`Blocks.launch()`, which would serve the page alone: no /classify, no body cap, none of the app's middleware. So
app.py serves its own FastAPI app as `python app.py` does, and serve() starts Gradio's reloader beside it (the
watcher `launch()` would start, gradio.utils.watchfn). On an edit of a .py file in the watched folders, the watcher
reruns app.py in the same process, whose main() then returns a new page (new_page()), and swaps it into the Gradio
app mounted at /. What reloads is the page: app.py and PAGE_MODULES. The rest keeps running as started: the
model, the settings, the one concurrency limit shared with /classify, the middleware and /classify itself (an
edit of those needs a restart). So that the new page's code still agrees with the running model's and limits'
(their exception classes, the upload folder), the watcher's fresh imports of the other serving modules are
replaced by the running ones before the page is built.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

log = logging.getLogger(__name__)

# The modules a reload rebuilds the page from: re-imported on every edit. Every other serving module stays as started.
PAGE_MODULES = ("serving.page", "serving.sgd_tab", "serving.sgd", "serving.reloading")
# What `launch()` and mount_gradio_app set on the page they serve, carried over to each new page.
CARRIED = ("show_error", "footer_links", "run_history", "custom_mount_path", "favicon_path", "auth", "ssr_mode",
           "state_session_capacity", "delete_cache")


def watched() -> bool:
    """Whether `gradio app.py` started this process (it sets GRADIO_WATCH_DIRS)."""
    return bool(os.environ.get("GRADIO_WATCH_DIRS"))


def rerun() -> bool:
    """Whether app.py is being rerun by Gradio's watcher after an edit, rather than started."""
    if not watched():  # and Gradio not imported yet: `python app.py` loads the model while it imports
        return False
    from gradio.cli.commands.reload import reload_thread

    return getattr(reload_thread, "running_reload", False)


def serve(app: FastAPI, **uvicorn_options: Any) -> None:
    """uvicorn.run(app, **uvicorn_options), with Gradio's reloader watching the folders `gradio app.py` names."""
    import uvicorn
    from gradio import http_server, utils

    gradio_app = app.state.gradio_app
    gradio_app.blocks.dev_mode = True  # the page then reloads itself in the browser after a swap
    gradio_app.blocks.server = None  # launch() sets it (to its own server), and the swap reads it
    gradio_app.blocks.config = gradio_app.blocks.get_config_file()
    app.state.kept_modules = {name: module for name, module in sys.modules.items()
                              if (name == "serving" or name.startswith("serving.")) and name not in PAGE_MODULES}
    reloader = utils.SourceFileReloader(
        app=gradio_app, watch_dirs=http_server.GRADIO_WATCH_DIRS,
        watch_module_name=http_server.GRADIO_WATCH_MODULE_NAME, demo_file=http_server.GRADIO_WATCH_DEMO_PATH,
        watch_module=sys.modules["__main__"], stop_event=threading.Event(),
        demo_name=http_server.GRADIO_WATCH_DEMO_NAME or "demo",
        encoding=os.environ.get("GRADIO_WATCH_ENCODING", "utf-8"))
    threading.Thread(target=utils.watchfn, args=(reloader,), name="gradio-reload", daemon=True).start()
    try:
        uvicorn.Server(uvicorn.Config(app, **uvicorn_options)).run()
    finally:
        reloader.stop()


def new_page(app: FastAPI, title: str) -> gr.Blocks:
    """A page built by the edited code, for the model, settings and slots `app` serves with."""
    sys.modules.update(app.state.kept_modules)  # before the page's imports: they then find the running modules
    from serving.gradio_workarounds import refuse_malformed_calls
    from serving.page import build_page

    demo = build_page(**app.state.page, title=title)
    running = app.state.gradio_app.blocks
    for name in CARRIED:
        setattr(demo, name, getattr(running, name))
    refuse_malformed_calls(demo)
    log.info("reloaded the page")
    return demo
