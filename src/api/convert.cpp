// mlkv::convert (include/mlkv/convert.h) over convert_folder of src/convert.
#include "mlkv/convert.h"

#include "convert/convert_folder.h"

namespace mlkv {

std::string convert(const std::string& src, const std::string& dst, const ConvertSpec& spec) {
  FolderConvertOptions fo;
  ConvertOptions& o = fo.convert;
  o.kv_heads = spec.kv_heads;
  o.kv_layers = spec.kv_layers;
  o.owners = spec.owners;
  o.kv_source = spec.kv_source;
  o.merge = spec.merge.empty() ? kDefaultMerge : parse_merge(spec.merge);
  o.widen = parse_widen(spec.widen);
  o.share = parse_share_rope(spec.share, "share");
  fo.dtype = spec.dtype;
  fo.tokenizer = spec.tokenizer;
  fo.force = spec.force;
  fo.fuse_qkv = spec.fuse_qkv;
  o.owners_auto = spec.owners_auto;
  fo.calibration.path = spec.calibration;
  fo.calibration.n_tokens = spec.calibration_tokens;
  fo.calibration.ctx = spec.calibration_ctx;
  o.calibrate.sequential = parse_calibration_stream(spec.calibration_stream, "calibration_stream");
  return conversion_json(src, dst, fo, convert_folder(src, dst, fo)).dump(2);
}

}  // namespace mlkv
