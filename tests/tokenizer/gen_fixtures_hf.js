// Reference ids for the byte-level BPE fixtures, from Hugging Face's own tokenizers library (the
// Rust implementation, through its node binding) and, as a second opinion for GPT-2, the
// gpt-3-encoder package (a port of OpenAI's encoder.py). Called by gen_fixtures.py:
//   node gen_fixtures_hf.js NPM_DIR CASES_JSON GPT2_TOKENIZER_JSON NEOX_TOKENIZER_JSON OUT_JSON
// CASES_JSON is {name: text}; OUT_JSON gets {neox: {name: {ids, decoded}}, gpt2: ..., gpt3enc: {name: ids}}.
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [npmDir, casesPath, outPath, ...tokenizers] = process.argv.slice(2);
const req = createRequire(path.join(path.resolve(npmDir), 'package.json'));
const { Tokenizer } = req('tokenizers');
const gpt3 = req('gpt-3-encoder');

async function run(tok, cases) {
  const out = {};
  for (const [name, text] of Object.entries(cases)) {
    const enc = await tok.encode(text, null, { addSpecialTokens: false });
    const ids = Array.from(enc.getIds());
    const decoded = await tok.decode(ids, false);
    out[name] = { ids, decoded };
  }
  return out;
}

(async () => {
  const cases = JSON.parse(fs.readFileSync(casesPath, 'utf8'));
  const out = {};
  for (const kv of tokenizers) {
    const eq = kv.indexOf('=');
    out[kv.slice(0, eq)] = await run(Tokenizer.fromFile(kv.slice(eq + 1)), cases);
  }
  // gpt-3-encoder knows no special tokens: encode around <|endoftext|> and put 50256 in between.
  const gpt3enc = {};
  for (const [name, text] of Object.entries(cases)) {
    const parts = text.split('<|endoftext|>');
    const ids = [];
    parts.forEach((p, i) => {
      if (i > 0) ids.push(50256);
      if (p.length > 0) ids.push(...gpt3.encode(p));
    });
    gpt3enc[name] = ids;
  }
  out.gpt3enc = gpt3enc;
  fs.writeFileSync(outPath, JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
