// Placeholder translation unit until the tokenizer library lands (keeps the target non-empty).
namespace mlkv::detail {
int tokenizer_placeholder = 0;
}
