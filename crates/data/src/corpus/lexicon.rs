//! Word lists of the synthetic world, English and Chinese side by side. All written for escale.
//!
//! Names are built from syllables, each with a fixed Chinese character (the way foreign names are
//! transliterated), so an entity's English and Chinese names correspond: "Belan" = "贝兰". All
//! Chinese syllable characters are distinct, so the mapping is one-to-one.

/// Syllables that can start or end a name: (English, Chinese).
pub const OPEN_SYLLABLES: &[(&str, &str)] = &[
    ("a", "阿"), ("ba", "巴"), ("be", "贝"), ("bo", "博"), ("da", "达"), ("de", "德"), ("di", "迪"),
    ("do", "多"), ("fa", "法"), ("fe", "菲"), ("ga", "加"), ("go", "戈"), ("ha", "哈"), ("he", "赫"),
    ("ka", "卡"), ("ke", "克"), ("ki", "基"), ("ko", "科"), ("la", "拉"), ("le", "莱"), ("li", "利"),
    ("lo", "洛"), ("lu", "卢"), ("ma", "马"), ("me", "梅"), ("mi", "米"), ("mo", "莫"), ("na", "纳"),
    ("ne", "内"), ("ni", "尼"), ("no", "诺"), ("pa", "帕"), ("pe", "佩"), ("po", "波"), ("ri", "里"),
    ("ro", "罗"), ("ru", "鲁"), ("sa", "萨"), ("se", "塞"), ("si", "西"), ("so", "索"), ("ta", "塔"),
    ("te", "特"), ("ti", "蒂"), ("to", "托"), ("va", "瓦"), ("ve", "维"), ("vi", "薇"), ("ya", "雅"),
    ("yo", "约"), ("za", "扎"), ("zo", "佐"),
];

/// Syllables that only end a name.
pub const CLOSED_SYLLABLES: &[(&str, &str)] = &[
    ("lan", "兰"), ("ren", "伦"), ("sen", "森"), ("tan", "坦"), ("min", "敏"), ("lin", "林"),
    ("von", "冯"), ("dan", "丹"), ("ran", "然"), ("kin", "金"), ("mar", "玛"), ("nel", "奈"),
    ("ris", "丝"), ("mus", "穆"), ("tor", "陶"), ("gan", "甘"),
];

/// City name endings.
pub const CITY_SUFFIXES: &[(&str, &str)] = &[
    ("port", "港"), ("ford", "渡"), ("hill", "山"), ("field", "原"), ("burg", "堡"), ("bridge", "桥"),
    ("wood", "木"), ("stone", "石"), ("haven", "湾"), ("vale", "谷"), ("ton", "顿"), ("mouth", "口"),
];

/// Country name endings.
pub const COUNTRY_SUFFIXES: &[(&str, &str)] = &[
    ("ria", "利亚"), ("nia", "尼亚"), ("land", "兰"), ("stan", "斯坦"), ("mark", "马克"),
];

pub const PROFESSIONS: &[(&str, &str)] = &[
    ("teacher", "老师"), ("doctor", "医生"), ("farmer", "农民"), ("baker", "面包师"),
    ("engineer", "工程师"), ("painter", "画家"), ("sailor", "水手"), ("singer", "歌手"),
    ("writer", "作家"), ("nurse", "护士"), ("pilot", "飞行员"), ("cook", "厨师"),
    ("carpenter", "木匠"), ("fisherman", "渔夫"), ("merchant", "商人"), ("scientist", "科学家"),
    ("judge", "法官"), ("gardener", "园丁"), ("tailor", "裁缝"), ("librarian", "图书管理员"),
    ("musician", "音乐家"), ("potter", "陶艺师"), ("miner", "矿工"), ("mail carrier", "邮递员"),
    ("astronomer", "天文学家"), ("dancer", "舞蹈家"), ("photographer", "摄影师"), ("architect", "建筑师"),
    ("beekeeper", "养蜂人"), ("shepherd", "牧羊人"), ("blacksmith", "铁匠"), ("police officer", "警察"),
];

pub const COLORS: &[(&str, &str)] = &[
    ("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"), ("white", "白色"),
    ("black", "黑色"), ("purple", "紫色"), ("orange", "橙色"), ("pink", "粉色"), ("gray", "灰色"),
    ("brown", "棕色"), ("silver", "银色"), ("gold", "金色"),
];

/// Foods, as eaten ("loves to eat apples" / "最爱吃苹果").
pub const FOODS: &[(&str, &str)] = &[
    ("apples", "苹果"), ("noodles", "面条"), ("rice", "米饭"), ("bread", "面包"), ("fish", "鱼"),
    ("dumplings", "饺子"), ("cheese", "奶酪"), ("cake", "蛋糕"), ("oranges", "橙子"), ("grapes", "葡萄"),
    ("tofu", "豆腐"), ("honey", "蜂蜜"), ("pears", "梨"), ("peaches", "桃子"), ("mushrooms", "蘑菇"),
    ("eggs", "鸡蛋"), ("carrots", "胡萝卜"), ("pancakes", "煎饼"), ("watermelon", "西瓜"), ("buns", "包子"),
];

/// Pets: (English, Chinese, Chinese measure word).
pub const ANIMALS: &[(&str, &str, &str)] = &[
    ("cat", "猫", "只"), ("dog", "狗", "条"), ("rabbit", "兔子", "只"), ("parrot", "鹦鹉", "只"),
    ("horse", "马", "匹"), ("goat", "山羊", "只"), ("turtle", "乌龟", "只"), ("goldfish", "金鱼", "条"),
    ("duck", "鸭子", "只"), ("owl", "猫头鹰", "只"), ("hamster", "仓鼠", "只"), ("pig", "小猪", "头"),
    ("canary", "金丝雀", "只"), ("lizard", "蜥蜴", "只"),
];

/// Hobbies: (English gerund phrase, Chinese verb phrase).
pub const HOBBIES: &[(&str, &str)] = &[
    ("playing chess", "下棋"), ("swimming", "游泳"), ("painting", "画画"), ("reading", "看书"),
    ("fishing", "钓鱼"), ("singing", "唱歌"), ("running", "跑步"), ("dancing", "跳舞"),
    ("gardening", "种花"), ("cooking", "做饭"), ("climbing mountains", "爬山"), ("writing poems", "写诗"),
    ("playing the flute", "吹笛子"), ("watching birds", "看鸟"), ("flying kites", "放风筝"),
    ("riding a bicycle", "骑自行车"), ("playing the piano", "弹钢琴"), ("knitting", "织毛衣"),
];

/// What a city is famous for.
pub const PRODUCTS: &[(&str, &str)] = &[
    ("tea", "茶叶"), ("silk", "丝绸"), ("ships", "船"), ("clocks", "钟表"), ("glass", "玻璃"),
    ("paper", "纸"), ("salt", "盐"), ("horses", "马"), ("pottery", "陶器"), ("cheese", "奶酪"),
    ("lanterns", "灯笼"), ("carpets", "地毯"), ("books", "书"), ("kites", "风筝"), ("umbrellas", "雨伞"),
    ("rice", "大米"), ("bells", "铃铛"), ("wine", "葡萄酒"), ("furniture", "家具"), ("medicine", "药材"),
];

/// Weather: (English adjective, Chinese predicate after 常常).
pub const WEATHER: &[(&str, &str)] = &[
    ("rainy", "下雨"), ("windy", "刮风"), ("sunny", "阳光明媚"), ("snowy", "下雪"), ("foggy", "有雾"),
    ("hot", "很热"), ("cold", "很冷"), ("cloudy", "多云"),
];

/// Countable things for word problems: (singular, plural, Chinese, measure word).
pub const COUNTABLES: &[(&str, &str, &str, &str)] = &[
    ("apple", "apples", "苹果", "个"), ("pear", "pears", "梨", "个"), ("peach", "peaches", "桃子", "个"),
    ("book", "books", "书", "本"), ("pencil", "pencils", "铅笔", "支"), ("flower", "flowers", "花", "朵"),
    ("coin", "coins", "硬币", "枚"), ("egg", "eggs", "鸡蛋", "个"), ("stone", "stones", "石头", "块"),
    ("letter", "letters", "信", "封"), ("cup", "cups", "杯子", "个"), ("shell", "shells", "贝壳", "个"),
];

/// Small gifts in stories: (English, Chinese, measure word).
pub const GIFTS: &[(&str, &str, &str)] = &[
    ("scarf", "围巾", "条"), ("hat", "帽子", "顶"), ("cup", "杯子", "个"), ("notebook", "笔记本", "个"),
    ("kite", "风筝", "个"), ("lamp", "灯", "盏"), ("bag", "包", "个"), ("umbrella", "伞", "把"),
];

pub const DAY_PARTS: &[(&str, &str)] = &[
    ("morning", "早上"), ("afternoon", "下午"), ("evening", "傍晚"),
];

pub const NUMBER_WORDS_EN: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
];

pub const NUMBER_WORDS_ZH: &[&str] = &[
    "零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二", "十三", "十四",
    "十五", "十六", "十七", "十八", "十九", "二十",
];

pub const WEEKDAYS: &[(&str, &str)] = &[
    ("Monday", "星期一"), ("Tuesday", "星期二"), ("Wednesday", "星期三"), ("Thursday", "星期四"),
    ("Friday", "星期五"), ("Saturday", "星期六"), ("Sunday", "星期日"),
];

pub const MONTHS: &[(&str, &str)] = &[
    ("January", "一月"), ("February", "二月"), ("March", "三月"), ("April", "四月"), ("May", "五月"),
    ("June", "六月"), ("July", "七月"), ("August", "八月"), ("September", "九月"), ("October", "十月"),
    ("November", "十一月"), ("December", "十二月"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syllable_characters_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for (en, zh) in OPEN_SYLLABLES.iter().chain(CLOSED_SYLLABLES) {
            assert!(seen.insert(*zh), "duplicate Chinese syllable {zh} ({en})");
        }
        let mut en: Vec<_> = OPEN_SYLLABLES.iter().chain(CLOSED_SYLLABLES).map(|s| s.0).collect();
        en.sort();
        en.dedup();
        assert_eq!(en.len(), OPEN_SYLLABLES.len() + CLOSED_SYLLABLES.len());
    }
}
