# The function of the custom runtime test: answers JSON built with the shell only.
# A body containing "fail" is reported as an error through the runtime's /error call.

handler () {
  EVENT_DATA="$1"
  case "$EVENT_DATA" in
    *fail*)
      return 1
      ;;
  esac
  printf '{"handler": "%s", "function": "%s", "memory": "%s", "tmpdir": "%s", "request_id": "%s", "event": %s}' \
    "$_HANDLER" "$AWS_LAMBDA_FUNCTION_NAME" "$AWS_LAMBDA_FUNCTION_MEMORY_SIZE" "$TMPDIR" "$REQUEST_ID" "$EVENT_DATA"
}
