# fehkit's HTTP service on the CPU: `fehkit serve` (docs/service.md).
#
# Docker cannot be built on the machines fehkit is developed on, so this image has NOT been built or run there;
# its start command, `fehkit serve`, is what tests/test_service.py starts and checks directly. Build and run:
#
#   docker build -t fehkit-service .
#   docker run --rm -p 8000:8000 -v "$PWD/fehkit-demo/model:/model:ro" fehkit-service
#
# The model folder is mounted read-only at /model (e.g. the model/ of `make demo`, or of `fehkit train`); set
# FEHKIT_API_KEY (docker run -e FEHKIT_API_KEY=...) to require an API key, and append options to change the
# command's (e.g. `... fehkit-service --model /model --host 0.0.0.0 --port 8000 --workers 4`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CPU build of torch from PyTorch's CPU index, pinned as the Makefile pins it: a bare `torch` requirement
# would pull the multi-GB CUDA build. fehkit's own requirement (torch >= 2.2) is then already met.
RUN python -m pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /opt/fehkit
COPY pyproject.toml README.md LICENSE ./
COPY fehkit ./fehkit
RUN python -m pip install ".[service]" && rm -rf /opt/fehkit/build

# An unprivileged user runs the service; it owns nothing but its home (the numba kernel cache).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin fehkit
USER fehkit
WORKDIR /home/fehkit
ENV NUMBA_CACHE_DIR=/home/fehkit/.cache/numba
# Compile the numba kernels once, into the image, so that a worker's start-up only loads them.
RUN python -c "import warnings; from fehkit.synth import make_benchmark; from fehkit.training import \
reference_params, spectra_features; warnings.simplefilter('ignore'); s = make_benchmark(4, seed=1); \
spectra_features(s.batch, reference_params(s.truth))"

EXPOSE 8000
# Liveness: the process answers /healthz (a worker starts answering once it has loaded and warmed the model).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["fehkit", "serve"]
CMD ["--model", "/model", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
