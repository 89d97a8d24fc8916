#include "train/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "nn/models.h"

namespace lowbit::train {

namespace {

// The one list of fields, so that JSON in, JSON out and the set of known keys cannot drift apart.
template <class F>
void for_each_field(TrainConfig &c, F f) {
    f("model", c.model);
    f("data", c.data);
    f("precision", c.precision);
    f("a_format", c.a_format);
    f("w_format", c.w_format);
    f("e_format", c.e_format);
    f("a_rounding", c.a_rounding);
    f("w_rounding", c.w_rounding);
    f("e_rounding", c.e_rounding);
    f("unsigned_activations", c.unsigned_activations);
    f("float_first_last", c.float_first_last);
    f("quantize_linear", c.quantize_linear);
    f("epochs", c.epochs);
    f("batch", c.batch);
    f("lr", c.lr);
    f("momentum", c.momentum);
    f("nesterov", c.nesterov);
    f("weight_decay", c.weight_decay);
    f("schedule", c.schedule);
    f("augment", c.augment);
    f("seed", c.seed);
    f("threads", c.threads);
    f("train_limit", c.train_limit);
    f("test_limit", c.test_limit);
    f("out", c.out);
}

// YAML scalars carry no type: take what they read as, most specific first.
nlohmann::json yaml_to_json(const YAML::Node &node) {
    switch (node.Type()) {
        case YAML::NodeType::Map: {
            nlohmann::json j = nlohmann::json::object();
            for (const auto &kv : node) j[kv.first.as<std::string>()] = yaml_to_json(kv.second);
            return j;
        }
        case YAML::NodeType::Sequence: {
            nlohmann::json j = nlohmann::json::array();
            for (const auto &v : node) j.push_back(yaml_to_json(v));
            return j;
        }
        case YAML::NodeType::Scalar: {
            const std::string s = node.Scalar();
            if (node.Tag() == "!") return s;  // quoted: a string
            if (s == "true" || s == "false") return s == "true";
            try {
                size_t used = 0;
                const long long i = std::stoll(s, &used);
                if (used == s.size()) return i;
                const double d = std::stod(s, &used);
                if (used == s.size()) return d;
            } catch (const std::exception &) {
            }
            return s;
        }
        default:
            return nullptr;
    }
}

}  // namespace

void TrainConfig::validate() const {
    nn::validate_model_name(model);
    if (precision != "lowbit" && precision != "float32")
        throw std::invalid_argument(fmt::format("precision '{}': expected lowbit or float32", precision));
    for (const auto &[name, text] : {std::pair{"a_format", a_format}, {"w_format", w_format}, {"e_format", e_format}}) {
        Format f;
        try {
            f = parse_format(text);
        } catch (const std::exception &e) {
            throw std::invalid_argument(fmt::format("{}: {}", name, e.what()));
        }
        if (!f.fits_int8())
            throw std::invalid_argument(
                fmt::format("{} {}: qmax {} > 127 does not fit the int8 kernels", name, text, f.qmax()));
        if (!f.has_sign)
            throw std::invalid_argument(fmt::format(
                "{} {}: give a signed format here (the first layer's input, the weights and the errors are "
                "signed); unsigned_activations (on by default) uses the activation format's unsigned variant "
                "of the same width after ReLUs",
                name, text));
    }
    for (const auto &[name, text] :
         {std::pair{"a_rounding", a_rounding}, {"w_rounding", w_rounding}, {"e_rounding", e_rounding}}) {
        try {
            parse_rounding(text);
        } catch (const std::exception &e) {
            throw std::invalid_argument(fmt::format("{}: {}", name, e.what()));
        }
    }
    if (epochs < 1) throw std::invalid_argument(fmt::format("epochs {}: must be at least 1", epochs));
    if (batch < 1) throw std::invalid_argument(fmt::format("batch {}: must be at least 1", batch));
    if (!(lr >= 0)) throw std::invalid_argument(fmt::format("lr {}: must be >= 0", lr));
    if (threads < 0) throw std::invalid_argument(fmt::format("threads {}: must be >= 0", threads));
}

nn::PrecisionPolicy TrainConfig::policy() const {
    nn::PrecisionPolicy p;
    p.float_first_last = float_first_last;
    p.quantize_linear = quantize_linear;
    p.unsigned_activations = unsigned_activations;
    if (precision == "float32") return p;
    p.body.low_bit = true;
    p.body.activations = parse_format(a_format);
    p.body.weights = parse_format(w_format);
    p.body.errors = parse_format(e_format);
    p.body.activation_rounding = parse_rounding(a_rounding);
    p.body.weight_rounding = parse_rounding(w_rounding);
    p.body.error_rounding = parse_rounding(e_rounding);
    return p;
}

std::string named_run_folder(const TrainConfig &c) {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &local);
    return fmt::format("runs/{}-{}-{}", c.model, c.precision, stamp);
}

nlohmann::json to_json(const TrainConfig &config) {
    nlohmann::json j = nlohmann::json::object();
    TrainConfig c = config;
    for_each_field(c, [&](const char *key, auto &value) { j[key] = value; });
    return j;
}

void update_from_json(TrainConfig &c, const nlohmann::json &j, const std::string &source) {
    if (!j.is_object()) throw std::invalid_argument(fmt::format("{}: expected an object of settings", source));
    for (const auto &item : j.items()) {
        bool known = false;
        for_each_field(c, [&](const char *key, auto &value) {
            if (item.key() != key) return;
            known = true;
            using T = std::decay_t<decltype(value)>;
            const nlohmann::json &v = item.value();
            const bool ok = std::is_same_v<T, std::string> ? v.is_string()
                            : std::is_same_v<T, bool>      ? v.is_boolean()
                            : std::is_floating_point_v<T>  ? v.is_number()
                                                           : v.is_number_integer();
            if (!ok)
                throw std::invalid_argument(fmt::format("{}: '{}' has the wrong type ({})", source, key, v.dump()));
            value = v.get<T>();
        });
        if (!known) throw std::invalid_argument(fmt::format("{}: unknown setting '{}'", source, item.key()));
    }
}

nlohmann::json read_config_file(const std::string &path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(fmt::format("{}: cannot open", path));
    std::stringstream text;
    text << in.rdbuf();
    const bool yaml =
        path.size() > 5 && (path.substr(path.size() - 5) == ".yaml" || path.substr(path.size() - 4) == ".yml");
    try {
        if (yaml) return yaml_to_json(YAML::Load(text.str()));
        return nlohmann::json::parse(text.str());
    } catch (const std::exception &e) {
        throw std::runtime_error(fmt::format("{}: {}", path, e.what()));
    }
}

}  // namespace lowbit::train
