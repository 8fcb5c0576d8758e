FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY exchange ./exchange
COPY sql ./sql
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 exchange
USER exchange

ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["exchange", "serve"]
