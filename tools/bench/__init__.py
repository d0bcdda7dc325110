"""Side-by-side CPU latency benchmark: eager PyTorch vs fxpress (TVM) vs ONNX Runtime vs OpenVINO.

    python -m tools.bench                       # everything, threads 1 and 2
    python -m tools.bench --models resnet18 --threads 1 --rounds 30
    python -m tools.bench --models efficientnet-lite0 --contenders eager,fxpress-int8,openvino-int8
    python -m tools.bench --quick               # a smoke run: small shapes, few rounds

fp32 and int8 both ways: fxpress's int8 pipeline against PyTorch's and ONNX
Runtime's dynamic int8 (MiniLM) and OpenVINO + NNCF static int8 (every case
with calibration data). The OpenVINO contenders need the ``bench`` extra
(``pip install -e '.[bench]'``, which ``make bench`` installs); without it they
are skipped with a note.

Method (why: these machines are shared, and a number measured alone means
little): for each model case and thread count, every contender is built with
that thread count fixed (``torch.set_num_threads``, fxpress's
``num_threads``, ORT's ``intra_op_num_threads``, OpenVINO's
``INFERENCE_NUM_THREADS``), warmed up, then measured in
*interleaved* rounds: each round runs every contender once, in an order that
rotates from round to round, with a short sleep between calls so one
runtime's spinning worker threads do not eat into the next. We report
medians, and for each contender the CPU time per wall second it obtained
(process CPU time over wall time during its own calls), the load average, and
the machine, so a reader can tell a slow kernel from a starved one. Slow
contenders (untuned TVM on BERT takes seconds a call) run in fewer, evenly
spread rounds, bounded by a time budget per contender.

Results go to ``<out-dir>/results.json`` (everything, raw samples included) and
``<out-dir>/results.md`` (the table). Modules: `cases` (models and inputs),
`contenders` (how each runtime is built and called), `measure` (warm-up and
interleaved rounds), `machine`, `report`, `run` (the command line).
"""
